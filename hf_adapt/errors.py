"""Exceptions meant for people: each names the file, row or field at fault."""


class HfAdaptError(Exception):
    """Base class for errors hf-adapt raises on bad input or state."""


class ConfigError(HfAdaptError, ValueError):
    """A config file or flag is missing, unknown, or of the wrong type."""


class DataError(HfAdaptError, ValueError):
    """A data file, split, column or row cannot be used as given."""


class ModelError(HfAdaptError, ValueError):
    """A backbone, head or adapter cannot be built or loaded as asked."""


class OutputError(HfAdaptError, FileExistsError):
    """The output directory holds something we must not overwrite."""


class HubError(HfAdaptError, RuntimeError):
    """A push to (or read from) the Hugging Face Hub failed or was refused; the local output is intact."""


class ReleaseGateError(HfAdaptError):
    """A run missed its release gate (forgetting, win rate): the outputs are written, nothing is pushed."""


class OperatingPointError(DataError):
    """A decision threshold cannot be chosen as asked on the validation scores (one class, unreachable target)."""


class TrainingDivergedError(HfAdaptError, RuntimeError):
    """The training loss became NaN or infinite; nothing from the run is saved."""
