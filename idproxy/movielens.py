"""MovieLens-100K, read from the installed `recbole` package (never copied into the repo).

GroupLens terms apply (research use, no redistribution), which is why the files are read
from site-packages at run time. The publisher's replay, the trainers, the demo and the
benchmarks all read it, so it sits in the ground layer with the settings.

Conventions used everywhere in this project:

* a rating >= 4 is a click (label 1), any other rating a non-click (label 0);
* item content text is ``"<title> (<year>). Genres: <g1>, <g2>."``;
* interactions are sorted by (timestamp, original row), so "earlier" is well defined;
* ids stay the raw MovieLens integers (users 1..943, items 1..1682).
"""

from __future__ import annotations

import csv
import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

CLICK_THRESHOLD = 4.0


@dataclass(frozen=True)
class MovieLens:
    """The dataset as arrays. Interactions are time-ordered; per-id tables are dicts."""

    users: np.ndarray  # int64 [N] raw user ids
    items: np.ndarray  # int64 [N] raw item ids
    ratings: np.ndarray  # float32 [N]
    timestamps: np.ndarray  # int64 [N] unix seconds
    item_title: dict[int, str]
    item_year: dict[int, int]  # 0 when unknown
    item_genres: dict[int, tuple[str, ...]]
    user_age: dict[int, int]
    user_gender: dict[int, str]
    user_occupation: dict[int, str]

    @property
    def labels(self) -> np.ndarray:
        """float32 [N]: 1.0 for a click (rating >= 4), else 0.0."""
        return (self.ratings >= CLICK_THRESHOLD).astype(np.float32)

    @property
    def item_ids(self) -> list[int]:
        return sorted(self.item_title)

    @property
    def genre_names(self) -> list[str]:
        return sorted({g for gs in self.item_genres.values() for g in gs})

    def item_text(self, item: int) -> str:
        year = self.item_year[item]
        year_part = f" ({year})" if year else ""
        genres = ", ".join(self.item_genres[item]) or "unknown"
        return f"{self.item_title[item]}{year_part}. Genres: {genres}."


def dataset_dir() -> Path:
    """Folder of ml-100k inside the installed recbole wheel."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "MovieLens-100K comes from the `recbole` package: run `bash scripts/setup.sh`"
        ) from exc
    path = Path(str(dist.locate_file("recbole/dataset_example/ml-100k")))
    if not (path / "ml-100k.inter").is_file():
        raise RuntimeError(f"recbole is installed but {path}/ml-100k.inter is missing")
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]
        return [dict(zip(header, row, strict=False)) for row in reader]


@lru_cache(maxsize=1)
def load_movielens() -> MovieLens:
    """Loads ml-100k (100,000 ratings, 943 users, 1,682 items) in time order."""
    root = dataset_dir()
    inter = _rows(root / "ml-100k.inter")
    users = np.array([int(r["user_id"]) for r in inter], dtype=np.int64)
    items = np.array([int(r["item_id"]) for r in inter], dtype=np.int64)
    ratings = np.array([float(r["rating"]) for r in inter], dtype=np.float32)
    stamps = np.array([int(float(r["timestamp"])) for r in inter], dtype=np.int64)
    order = np.lexsort((np.arange(len(stamps)), stamps))

    title, year, genres = {}, {}, {}
    for r in _rows(root / "ml-100k.item"):
        i = int(r["item_id"])
        title[i] = r.get("movie_title", "").strip() or f"item {i}"
        y = (r.get("release_year") or "").strip()
        year[i] = int(y) if y.isdigit() else 0
        genres[i] = tuple((r.get("class") or "").split())

    age, gender, occupation = {}, {}, {}
    for r in _rows(root / "ml-100k.user"):
        u = int(r["user_id"])
        age[u] = int(r["age"])
        gender[u] = r["gender"]
        occupation[u] = r["occupation"]

    return MovieLens(
        users=users[order],
        items=items[order],
        ratings=ratings[order],
        timestamps=stamps[order],
        item_title=title,
        item_year=year,
        item_genres=genres,
        user_age=age,
        user_gender=gender,
        user_occupation=occupation,
    )
