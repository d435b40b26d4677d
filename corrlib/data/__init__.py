"""Datasets and file formats (torchvision-style: ``root``, ``split``, ``transform``, ``download``)."""
