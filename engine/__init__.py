"""OncoStaging engine: cancer segmentation and T-staging for the OncoStaging 3D Slicer extension.

Sub-packages follow the pipeline: ``io`` → ``data`` → ``planning`` → ``preprocessing`` →
``training`` → (models, inference, explain) → ``metrics``; ``registry`` holds model bundles and
``synth`` the synthetic phantoms. The engine never imports Slicer, Qt or VTK.
"""

__version__ = "0.1.0"
