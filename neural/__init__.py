"""trirender's neural layer (PyTorch): dataset loading, the GQN model, training and evaluation.

Not built yet: see the open issues "Datasets" and "Neural renderer". Imports torch; never imports
the app package ``trirender``.
"""
