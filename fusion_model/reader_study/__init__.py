"""Reader studies: blinded reading sessions in the browser and their multi-reader multi-case analysis."""
