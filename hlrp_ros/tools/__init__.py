"""Command-line tools: dataset generation, training, evaluation and the demo."""
