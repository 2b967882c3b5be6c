"""One module per command: check arguments, open inputs and the model directory, hand batches to an engine,
finish the run (alerts, summary, atomic publish). Only the CLI imports these."""
