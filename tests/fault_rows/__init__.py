"""The rows of tests/test_fault_injection.py, one module per entry script.

A row damages a copy of the shared workspace (or writes the bad input into its own tmp folder) and returns
``(script, argv, words the last error line must name)``; the test there runs it and checks the promise.
"""
from tests.fault_rows import dicom, evaluating, exporting, predicting, preparing, training

ROWS = [*preparing.ROWS, *training.ROWS, *evaluating.ROWS, *predicting.ROWS, *exporting.ROWS, *dicom.ROWS]
