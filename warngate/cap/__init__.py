"""CAP 1.2 (and 1.1) messages: safe parsing, validation, level mapping, areas."""

from warngate.cap.areas import area_shapes, other_geocodes, pick_info, region_codes
from warngate.cap.levels import alert_level
from warngate.cap.model import CapAlert, CapArea, CapError, CapInfo, CapRef, CapResource
from warngate.cap.parse import Result, parse_cap, validate_files
from warngate.cap.signature import SignatureCheck, verify_signature

__all__ = [
    "CapAlert",
    "CapArea",
    "CapError",
    "CapInfo",
    "CapRef",
    "CapResource",
    "Result",
    "SignatureCheck",
    "alert_level",
    "area_shapes",
    "other_geocodes",
    "parse_cap",
    "pick_info",
    "region_codes",
    "validate_files",
    "verify_signature",
]
