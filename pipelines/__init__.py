"""Top floor: the KFP pipelines that chain the rooms (labelling, training, release) and the CLI."""
