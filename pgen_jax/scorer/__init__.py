"""The external scorer process (PyTorch): NIMA aesthetics and the Qwen2.5-VL profile judge, over HTTP.

Runs in its own process so the training process never imports torch; see server.py and client.py.
"""
