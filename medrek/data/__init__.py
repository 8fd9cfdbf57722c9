"""Released data, the record type and the benchmark loaders."""

from .loaders import DataError, load_medcf, load_medfe, load_medversa, load_records, load_split
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
    "load_records",
    "load_split",
    "released_path",
    "resolve_data_dir",
]
