"""Which input columns hold the captions and the key, and what the worker adds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import CapsfusError

# Columns every part file adds to the passthrough input columns.
ROW_ID = "row_id"
FUSED_CAPTION = "fused_caption"
STATUS = "status"
REASON = "reason"
DETAIL = "detail"
FINISH_REASON = "finish_reason"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
ADDED_COLUMNS = (ROW_ID, FUSED_CAPTION, STATUS, REASON, DETAIL, FINISH_REASON, PROMPT_TOKENS, COMPLETION_TOKENS)
# Columns reduce adds to the rejects and duplicates files.
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
DUPLICATE_OF = "duplicate_of"
REDUCE_COLUMNS = (REJECT_REASON, REJECT_DETAIL, DUPLICATE_OF)

# Staging files made from JSON inputs carry a per-row reading error ("code: detail") here.
INPUT_ERROR = "__capsfus_input_error"

STATUS_OK = "ok"
STATUS_INVALID = "invalid_input"


@dataclass(frozen=True)
class ColumnMapping:
    raw_caption: str = "laion_2b"
    synthetic_caption: str = "laion_coco"
    key: str | None = "image_url"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ColumnMapping":
        return cls(**data)

    def check(self, columns: list[str], file: str, key_required: bool) -> "ColumnMapping":
        """The mapping for one file's columns (a staged file's, less INPUT_ERROR); the default key
        column may be absent, then rows have no key."""
        if repeated := sorted({name for name in columns if columns.count(name) > 1}):
            raise CapsfusError(f"{file}: column(s) {', '.join(repeated)} appear more than once; a row's values "
                               "must each have their own name")
        if INPUT_ERROR in columns:
            raise CapsfusError(f"{file}: column {INPUT_ERROR} is capsfus-hpc's own (a JSON input's reading "
                               "errors); rename it")
        for role, name in (("raw caption", self.raw_caption), ("synthetic caption", self.synthetic_caption)):
            if name not in columns:
                raise CapsfusError(f"{file}: missing {role} column '{name}' (columns: {', '.join(columns)})")
        if self.key is not None and self.key not in columns and key_required:
            raise CapsfusError(f"{file}: missing key column '{self.key}' (columns: {', '.join(columns)})")
        clashes = sorted(set(columns) & {*ADDED_COLUMNS, *REDUCE_COLUMNS})
        if clashes:
            raise CapsfusError(f"{file}: column(s) {', '.join(clashes)} clash with output columns; rename them")
        return self
