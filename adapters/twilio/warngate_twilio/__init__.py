"""warngate adapters for Twilio: SMS (``twilio-sms``) and voice calls (``twilio-voice``)."""

from warngate_twilio.sms import TwilioSmsAdapter
from warngate_twilio.voice import TwilioVoiceAdapter

__all__ = ["TwilioSmsAdapter", "TwilioVoiceAdapter"]
