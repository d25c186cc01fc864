"""SIIM-FISABIO-RSNA COVID-19 Detection (https://www.kaggle.com/competitions/siim-covid19-detection).

Raw layout:
    train/<StudyInstanceUID>/<SeriesInstanceUID>/<image_id>.dcm   chest radiographs, ~2000-4000 px, some compressed
    test/<StudyInstanceUID>/<SeriesInstanceUID>/<image_id>.dcm
    train_image_level.csv   id (<image_id>_image), boxes (Python literal of {'x','y','width','height'} or empty),
                            label (`opacity 1 x1 y1 x2 y2 ...` or `none 1 0 0 1 1`), StudyInstanceUID
    train_study_level.csv   id (<study>_study) + one-hot Negative for Pneumonia, Typical Appearance,
                            Indeterminate Appearance, Atypical Appearance
    sample_submission.csv   id,PredictionString (one row per test study and per test image)
Metric: mAP@0.5 (VOC 2010) over negative/typical/indeterminate/atypical (study rows) and opacity/none (image rows).

`prep` checks the CSVs against the tree, reads every DICOM header (nothing is written while any of this fails),
then decodes each image once (modality + VOI LUT, MONOCHROME1 inverted, min-max; `kcomp.data.dicom`) into a square
`DATA_DIR/images/<image_id>.png` of `--size` px and `--bits` 8|16, in parallel worker processes that read the DICOM
and write the PNG themselves. Re-running skips PNGs already cached at that size and depth.

Index columns: id (image id), study_id, series_id, path (images/<id>.png, relative to DATA_DIR), dicom (relative to
the raw dir, recorded absolute in the `raw` metadata), split, height/width (the ORIGINAL DICOM size: boxes are in
those pixels, and the PNG is stretched per axis to size x size), boxes (list of {x1,y1,x2,y2,label='opacity'} in
original pixels, [] for none and test), study (negative|typical|indeterminate|atypical; null for test), has_opacity
(nullable Int64: 1/0 for train, <NA> for test), group (= study_id, so folds keep a study's images together).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcomp import console
from kcomp.artifacts._input import directory
from kcomp.competitions import PREP, register_competition
from kcomp.data.pool import WorkerPool, default_workers
from kcomp.errors import BadInput, BadUsage
from kcomp.options import check_values

if TYPE_CHECKING:
    import pandas as pd

COMPETITION = "siim-covid19"
TASK = "det"
CLASSES = ["opacity"]
STUDY_CLASSES = ["negative", "typical", "indeterminate", "atypical"]
STUDY_COLUMNS = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"]
IMAGE_CSV = "train_image_level.csv"
STUDY_CSV = "train_study_level.csv"
SPLIT_DIRS = ("train", "test")
IMAGES_DIR = "images"
DEFAULT_SIZE = 512
DEFAULT_BITS = 8
SHOW_BAD = 3  # bad files named in the one-line error; the rest are counted
INDEX_COLUMNS = ["id", "study_id", "series_id", "path", "dicom", "split", "height", "width", "boxes", "study",
                 "has_opacity", "group"]


# ------------------------------------------------------------------------------------------- raw layout and CSVs


def find_images(raw: Path) -> dict[str, dict[str, str]]:
    """image_id -> {split, study, series, dicom (relative to raw)} for every .dcm under train/ and test/."""
    found: dict[str, dict[str, str]] = {}
    for split in SPLIT_DIRS:
        base = raw / split
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.name.startswith(".") or p.is_dir() or p.suffix.lower() != ".dcm":
                continue
            parts = p.relative_to(base).parts
            if len(parts) != 3:
                raise BadInput(f"expected {split}/<StudyInstanceUID>/<SeriesInstanceUID>/<image_id>.dcm",
                               path=p)
            image = p.stem
            if image in found:
                raise BadInput(f"image id {image!r} also at {found[image]['dicom']}", path=p)
            found[image] = {"split": split, "study": parts[0], "series": parts[1],
                            "dicom": p.relative_to(raw).as_posix()}
    return found


def _strip(value: str, suffix: str, where: Path) -> str:
    if not value.endswith(suffix) or len(value) == len(suffix):
        raise BadInput(f"id {value!r} should be <uid>{suffix}", path=where)
    return value[: -len(suffix)]


def _unique(ids: list[str], where: Path) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise BadInput(f"duplicate id {i!r}", path=where)
        seen.add(i)


def read_study_labels(path: Path) -> dict[str, str]:
    """study uid -> negative|typical|indeterminate|atypical from the one-hot columns (exactly one 1 per row)."""
    from kcomp.artifacts.submission import read_csv

    df = read_csv(path, ["id", *STUDY_COLUMNS])
    _unique(list(df["id"]), path)
    out: dict[str, str] = {}
    for row in df.to_dict("records"):
        study = _strip(row["id"], "_study", path)
        values = []
        for col in STUDY_COLUMNS:
            text = str(row[col]).strip()
            try:
                v = float(text)
            except ValueError:
                v = -1.0
            if v not in (0.0, 1.0):
                raise BadInput(f"id {row['id']!r}: column {col!r} has value {text!r}; expected 0 or 1", path=path)
            values.append(int(v))
        if sum(values) != 1:
            marked = [c for c, v in zip(STUDY_COLUMNS, values) if v] or ["none"]
            raise BadInput(f"id {row['id']!r} has {sum(values)} classes marked ({', '.join(marked)}); expected "
                           "exactly one", path=path)
        out[study] = STUDY_CLASSES[values.index(1)]
    return out


def read_image_labels(path: Path, images: dict[str, dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """image id -> boxes [{x1,y1,x2,y2,label}] in original pixels, checked against the files under train/."""
    from kcomp.artifacts.submission import read_csv
    from kcomp.formats.prediction_string import parse_siim_boxes

    df = read_csv(path, ["id", "boxes", "label", "StudyInstanceUID"])
    _unique(list(df["id"]), path)
    out: dict[str, list[dict[str, Any]]] = {}
    for row in df.to_dict("records"):
        image = _strip(row["id"], "_image", path)
        where = images.get(image)
        if where is None:
            raise BadInput(f"id {row['id']!r} has no DICOM file train/{row['StudyInstanceUID']}/*/{image}.dcm",
                           path=path)
        if where["split"] != "train":
            raise BadInput(f"id {row['id']!r} is a training label but its file is {where['dicom']}", path=path)
        if row["StudyInstanceUID"] != where["study"]:
            raise BadInput(f"id {row['id']!r}: StudyInstanceUID {row['StudyInstanceUID']!r} but the file is "
                           f"{where['dicom']}", path=path)
        boxes = parse_siim_boxes(row["boxes"], where=f"{path}: id {row['id']!r}")
        out[image] = [{"x1": b["x"], "y1": b["y"], "x2": b["x"] + b["width"], "y2": b["y"] + b["height"],
                       "label": "opacity"} for b in boxes]
    return out


def _check_train(images: dict[str, dict[str, str]], boxes: dict[str, Any], studies: dict[str, str],
                 raw: Path) -> None:
    for image, where in images.items():
        if where["split"] != "train":
            continue
        if image not in boxes:
            raise BadInput(f"train image has no row {image}_image in {IMAGE_CSV}", path=raw / where["dicom"])
        if where["study"] not in studies:
            raise BadInput(f"train study has no row {where['study']}_study in {STUDY_CSV}",
                           path=raw / "train" / where["study"])


# --------------------------------------------------------------------------------------------- parallel decoding


def _header_task(src: str) -> tuple[int, int, str | None]:
    """(height, width, error) for one file; never raises, so one bad file cannot stop a worker."""
    from kcomp.data.dicom import read_dicom_header

    try:
        info = read_dicom_header(src)
    except BadInput as e:
        return 0, 0, _reason(e, src)
    except Exception as e:  # noqa: BLE001 - report, do not kill the pool
        return 0, 0, f"{type(e).__name__}: {e}"
    return info["height"], info["width"], None


def _cache_task(job: tuple[str, str, int, int]) -> str | None:
    """Decode one DICOM and write its square PNG atomically; None or the reason it failed."""
    import cv2

    from kcomp.artifacts._atomic import atomic_write_bytes
    from kcomp.data.dicom import read_dicom, resize_cached

    src, dst, size, bits = job
    try:
        img, _ = read_dicom(src, bits=bits)
        ok, png = cv2.imencode(".png", resize_cached(img, size), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            return "could not encode the PNG"
        atomic_write_bytes(dst, png.tobytes())
    except BadInput as e:
        return _reason(e, src)
    except Exception as e:  # noqa: BLE001 - report, do not kill the pool
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def _reason(e: BadInput, src: str) -> str:
    text = str(e)
    return text[len(src) + 2:] if text.startswith(f"{src}: ") else text


def cached_png(path: Path, size: int, bits: int) -> bool:
    """Is `path` a grayscale PNG of size x size at `bits` depth? Reads the 26-byte header only."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return (w, h, head[24], head[25]) == (size, size, bits, 0)


def _bad_files_error(bad: list[tuple[str, str]], stage: str) -> BadInput:
    shown = "; ".join(f"{p}: {why}" for p, why in bad[:SHOW_BAD])
    more = f"; and {len(bad) - SHOW_BAD} more" if len(bad) > SHOW_BAD else ""
    return BadInput(f"{len(bad)} unreadable DICOM file(s) {stage} (--skip-bad leaves them out): {shown}{more}")


# ---------------------------------------------------------------------------------------------------- prep


def _options(size: Any, bits: Any, workers: Any) -> tuple[int, int, int]:
    size = DEFAULT_SIZE if size is None else size
    bits = DEFAULT_BITS if bits is None else bits
    workers = default_workers() if workers is None else workers
    check_values(PREP, size=size, bits=bits, workers=workers)  # prep's own rules
    return size, bits, workers


def prep_siim(raw: Path | None, out: Path, *, size: int | None = None, bits: int | None = None,
              workers: int | None = None, skip_bad: bool = False) -> list[str]:
    """Validate the download, cache every image as a size x size PNG, then write `out/index.parquet`."""
    from kcomp.artifacts.index import write_index

    size, bits, workers = _options(size, bits, workers)
    if raw is None:
        raise BadUsage(f"prep {COMPETITION} needs RAW_DIR (the unpacked competition download)")
    raw, out = Path(raw), Path(out)
    directory(raw, "raw directory")
    images = find_images(raw)
    if not any(v["split"] == "train" for v in images.values()):
        raise BadInput("no DICOM files found: expected train/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm",
                       path=raw)
    studies = read_study_labels(raw / STUDY_CSV)
    boxes = read_image_labels(raw / IMAGE_CSV, images)
    _check_train(images, boxes, studies, raw)

    ids = sorted(images, key=lambda i: (SPLIT_DIRS.index(images[i]["split"]), images[i]["study"], i))
    with WorkerPool(workers, preload=("cv2", "pydicom.pixels", "kcomp.data.dicom")) as pool:
        sizes, bad = _read_headers(pool, [(i, str(raw / images[i]["dicom"])) for i in ids], skip_bad=skip_bad)
        late = _cache_images(pool, [(i, str(raw / images[i]["dicom"])) for i in sizes], out / IMAGES_DIR,
                             size=size, bits=bits, skip_bad=skip_bad)
    if bad or late:
        console.log(f"{COMPETITION}: left out {len(bad) + len(late)} unreadable DICOM file(s): "
                    + "; ".join(f"{p}: {why}" for p, why in bad + late))
    dropped = {Path(p).stem for p, _ in late}

    rows = []
    for i, (h, w) in sizes.items():
        if i in dropped:
            continue
        where = images[i]
        train = where["split"] == "train"
        rows.append({"id": i, "study_id": where["study"], "series_id": where["series"],
                     "path": f"{IMAGES_DIR}/{i}.png", "dicom": where["dicom"], "split": where["split"],
                     "height": h, "width": w, "boxes": boxes[i] if train else [],
                     "study": studies[where["study"]] if train else None,
                     "has_opacity": int(bool(boxes[i])) if train else None, "group": where["study"]})
    if not any(r["split"] == "train" for r in rows):
        raise BadInput("no readable train image left to index", path=raw)
    df = _frame(rows)
    out.mkdir(parents=True, exist_ok=True)
    path = write_index(df, out / "index.parquet", root=out, competition=COMPETITION, task=TASK, classes=CLASSES,
                       size=size, bits=bits, raw=str(raw.resolve()), study_classes=STUDY_CLASSES)
    n_train = int((df["split"] == "train").sum())
    console.log(f"{COMPETITION}: {n_train} train image(s) ({int(df['has_opacity'].sum())} with opacity), "
                f"{len(df) - n_train} test image(s), {df['study_id'].nunique()} studies")
    return [path]


def _read_headers(pool: WorkerPool, files: list[tuple[str, str]], *, skip_bad: bool
                  ) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """({image id: (height, width)} of the readable files, [(path, reason)] of the others); raises on any bad file
    unless skip_bad. Nothing is written yet, so a failure here leaves DATA_DIR as it was."""
    headers = pool.map(_header_task, [src for _, src in files], "reading DICOM headers", chunk=32)
    bad = [(src, err) for (_, src), (_, _, err) in zip(files, headers) if err]
    if bad and not skip_bad:
        raise _bad_files_error(bad, "found before decoding")
    return {i: (h, w) for (i, _), (h, w, err) in zip(files, headers) if not err}, bad


def _cache_images(pool: WorkerPool, files: list[tuple[str, str]], img_dir: Path, *, size: int, bits: int,
                  skip_bad: bool) -> list[tuple[str, str]]:
    """Decode the files whose PNG is not cached at this size and depth; [(path, reason)] of those that failed."""
    jobs = [(src, str(img_dir / f"{i}.png"), size, bits) for i, src in files
            if not cached_png(img_dir / f"{i}.png", size, bits)]
    how = f"in {min(pool.workers, len(jobs))} worker process(es)" if pool.workers else "in this process"
    console.log(f"{COMPETITION}: {len(files) - len(jobs)} image(s) already cached, decoding {len(jobs)} {how}")
    if jobs:
        img_dir.mkdir(parents=True, exist_ok=True)
    errors = pool.map(_cache_task, jobs, f"decoding DICOM -> {size}px PNG")
    late = [(job[0], err) for job, err in zip(jobs, errors) if err]
    if late and not skip_bad:
        raise _bad_files_error(late, "while decoding; the other images stay cached")
    return late


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    df["height"] = df["height"].astype("int64")
    df["width"] = df["width"].astype("int64")
    df["has_opacity"] = df["has_opacity"].astype("Int64")
    df["study"] = df["study"].astype(object)
    return df


@register_competition(COMPETITION)
class SiimCovid19:
    """SIIM COVID-19 (det + study cls, mAP@0.5): train/<study>/<series>/<image>.dcm -> id,PredictionString"""

    task = TASK
    id_column = "id"
    kaggle_slug = "siim-covid19-detection"  # /kaggle/input/<slug> in a notebook (`kcomp pack`)

    def prep(self, raw: Path | None, out: Path, *, size: int | None = None, bits: int | None = None,
             workers: int | None = None, skip_bad: bool = False) -> list[str]:
        return prep_siim(raw, Path(out), size=size, bits=bits, workers=workers, skip_bad=bool(skip_bad))

    def submit(self, preds: list[Any], *, thresholds: dict[str, Any] | None, **options: Any) -> Any:
        from kcomp.competitions.siim_submit import submit_siim

        return submit_siim(preds, thresholds=thresholds, **options)
