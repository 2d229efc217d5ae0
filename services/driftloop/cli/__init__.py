"""The ``driftloop`` command: run the stack, the demo, and the ops verbs over the REST APIs."""
