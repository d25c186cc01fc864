"""The task contract (`kcomp.tasks.base.Task`): every registered task keeps it, and the prediction driver holds
tasks that predict one model at a time to that."""

from __future__ import annotations

import pytest

from kcomp.runs.predict import ModelFeed
from kcomp.tasks import TASKS, get_task
from kcomp.tasks.base import Task


@pytest.mark.parametrize("name", ["cls", "seg", "det", "ink"])
def test_every_task_implements_the_contract(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert isinstance(type(task).one_model_at_a_time, bool)
    assert sorted(TASKS.names()) == ["cls", "det", "ink", "seg"]


def test_dense_tasks_predict_one_model_at_a_time():
    assert {n for n in TASKS.names() if get_task(n).one_model_at_a_time} == {"seg", "ink"}


class _Task:
    name = "dense"
    one_model_at_a_time = True


def _one_by_one(models):
    for m in models:
        yield f"preds of {m}"


def _all_first(models):
    yield from [f"preds of {m}" for m in list(models)]


def test_a_dense_task_gets_each_model_after_yielding_the_previous_ones_predictions():
    feed = ModelFeed(_Task(), 3, lambda i: f"model {i}")
    assert list(feed.predictions(_one_by_one(feed.models()))) == [f"preds of model {i}" for i in range(3)]


def test_a_dense_task_asking_for_every_model_first_breaks_the_contract():
    feed = ModelFeed(_Task(), 3, lambda i: f"model {i}")
    with pytest.raises(RuntimeError, match="asked for model 2 before yielding model 1's predictions"):
        list(feed.predictions(_all_first(feed.models())))


def test_a_task_with_small_predictions_may_take_every_model_first():
    task = _Task()
    task.one_model_at_a_time = False
    feed = ModelFeed(task, 3, lambda i: f"model {i}")
    assert list(feed.predictions(_all_first(feed.models()))) == [f"preds of model {i}" for i in range(3)]
