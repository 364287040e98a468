"""Downloads what a config needs and lacks: models from the Hugging Face Hub, the MovieLens archive,
posters (see fetch/stage.py; `python -m pgen_jax.fetch --config=configs/<name>.py`).
"""
