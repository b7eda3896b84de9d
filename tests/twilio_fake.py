"""The fake Twilio now ships in the adapter package (``warngate_twilio.testing``); this module
keeps the old import path working for tests not yet moved to it."""

from __future__ import annotations

from warngate_twilio.testing import (
    AdapterRig,
    CallOutcome,
    FakeTwilio,
    Recorded,
    RejectionLog,
    Resource,
    adapter_rig,
    free_port,
    serving,
    sms_segments,
    twilio_options,
)

__all__ = [
    "AdapterRig", "CallOutcome", "FakeTwilio", "Recorded", "RejectionLog", "Resource",
    "adapter_rig", "free_port", "serving", "sms_segments", "twilio_options",
]
