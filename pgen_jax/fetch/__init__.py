"""Downloads what a config needs and lacks: models from the Hugging Face Hub, the MovieLens archive,
posters (see fetch/stage.py; `python -m pgen_jax.fetch --config=configs/<name>.py`).

Kept light: FetchError is imported by readers and the job's error handling.
"""


class FetchError(RuntimeError):
  """A download that cannot be done (no network, 404, wrong checksum); the message names what and where."""
