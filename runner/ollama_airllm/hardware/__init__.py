"""Hardware detection: AMD GPUs from sysfs (KFD topology + DRM), system RAM and disk, ROCm tool fallbacks."""
