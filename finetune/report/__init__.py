"""Looking inside a run: the HTML report, explain (Grad-CAM, activations, filters), plots."""
