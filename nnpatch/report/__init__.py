"""What a run says: statistics per cell (`stats`, `summary`), charts (`charts`), the report
page and summary (`page`), a finished folder opened for reading (`load`), `nnpatch compare`
(`compare`) and the end-of-run screen (`screen`)."""
