"""Released data, the record type and the benchmark loaders."""

from .loaders import (SUBSETS, DataError, load_medcf, load_medfe, load_medversa, load_named_split, load_records,
                      load_requests, load_split, select_requests)
from .records import EditRecord, LocalityProbe
from .sources import RELEASED_FILES, DataSourceError, released_path, resolve_data_dir

__all__ = [
    "DataError",
    "DataSourceError",
    "EditRecord",
    "LocalityProbe",
    "RELEASED_FILES",
    "load_medcf",
    "load_medfe",
    "load_medversa",
    "load_named_split",
    "load_records",
    "load_requests",
    "load_split",
    "select_requests",
    "SUBSETS",
    "released_path",
    "resolve_data_dir",
]
