"""Data: load with ``datasets``, validate, split, and turn rows into model inputs; labelled rows for the classifiers,
documents for language modelling.

Every check here runs before a model is built, so bad input fails in seconds and names
the file, split, row or column at fault.

Images come from ``datasets`` Image columns, class-subfolder folders (PNG/JPEG through
``imagefolder``; folders holding DICOM files are listed here, as ``imagefolder`` ignores them),
or manifests: a table whose image column holds file paths relative to the manifest's folder;
every such path must resolve inside that folder or ``image_root`` (see :mod:`hf_adapt.images`).
Image files are opened and checked by :mod:`hf_adapt.images` (DICOM through :mod:`hf_adapt.dicom`).

Modules: ``spec`` (what to load), ``files`` (reading files, folders, Hub datasets), ``splits``
(labels, carved splits, budgets, folds), ``rows`` (which kind the data is, rows rendered as text), ``checks`` (checks on loaded rows),
``labelled`` (``load_labelled``, ``LabelledData``, rows as inputs), ``corpus`` (``load_corpus``, documents for language modelling)
and ``stream`` (``load_streamed``: a train split read while training; imported where used, as it imports torch).
"""

from hf_adapt.data.checks import check_dicom_window
from hf_adapt.data.corpus import TextCorpus, load_corpus
from hf_adapt.data.files import SPLIT_NAMES, data_version, load_raw, read_problem
from hf_adapt.data.labelled import LabelledData, load_labelled, rows_to_inputs
from hf_adapt.data.rows import format_value, render_row, template_columns
from hf_adapt.data.spec import DataSpec
from hf_adapt.data.splits import group_folds, label_budget, label_names, make_splits

__all__ = [
    "SPLIT_NAMES",
    "DataSpec",
    "LabelledData",
    "TextCorpus",
    "check_dicom_window",
    "data_version",
    "format_value",
    "group_folds",
    "label_budget",
    "label_names",
    "load_corpus",
    "load_labelled",
    "load_raw",
    "make_splits",
    "read_problem",
    "render_row",
    "rows_to_inputs",
    "template_columns",
]
