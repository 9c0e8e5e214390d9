"""dead-letter: the store for events a trigger could not deliver (Knative deadLetterSink)."""
