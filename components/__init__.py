"""Training team's room: KFP components for training, evaluation, registration, release.

The logic lives in plain typed functions (``train``, ``export``, ``evaluate``,
``gate``, ``registry``, ``release``); ``kfp_components`` holds the thin
``@dsl.component`` adapters. Imports the core (``qcloop``), never another room.
"""
