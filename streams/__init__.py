"""Kafka: the broker ladder, topics, event schemas, publishers, workers, the stream
processor and the store materializer."""
