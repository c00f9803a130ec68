"""Images by UUID with an expiry: the ``ImageStore`` port (``store``), a directory
(``directory``) and an S3 bucket (``s3``)."""
