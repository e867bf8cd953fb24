"""PyTorch reference models, checkpoints, the synthetic task and tiny training loops.

Each family has its model file here (red.py, stagformer.py, nash*.py, pasta*.py); the
family registry (edgeseq/families/) names their config classes, presets and model classes.
"""
