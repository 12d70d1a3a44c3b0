"""The asyncio runtime: channels and the dynamic batcher that the LoadGen pipeline is built from."""
