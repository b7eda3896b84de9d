"""warngate adapter for village loudspeakers over MQTT 5 (``mqtt-speaker``), and a speaker
simulator (``warngate speaker-sim``) for demos, tests and load tests."""

from warngate_mqtt.adapter import MqttSpeakerAdapter

__all__ = ["MqttSpeakerAdapter"]
