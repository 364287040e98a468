"""Datasets: raw MovieLens / PixelRec files -> user histories -> prepared store -> grain batches."""
