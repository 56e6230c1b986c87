"""``mqtt``: streetlight controllers and other city sensors over MQTT (directly or via LoRaWAN)."""
