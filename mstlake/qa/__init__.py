"""Seeing the data: the QA report's figures (``figures``) and the report itself (``report``, ``mstlake qa``)."""
