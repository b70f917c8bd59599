"""apstorage: administer where a workflow-automation platform's files live."""

__version__ = "0.1.0"
