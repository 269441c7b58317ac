"""Data: sources (torchvision formats, image folders, synthetic), splits, batch augmentation, loaders."""

from cifar_mlflow.data.augment import BatchTransform
from cifar_mlflow.data.loader import DeviceLoader
from cifar_mlflow.data.sources import ImageData, load_image_data
from cifar_mlflow.data.splits import DataSplits, Split, split_data

__all__ = ["BatchTransform", "DataSplits", "DeviceLoader", "ImageData", "Split", "load_image_data", "split_data"]
