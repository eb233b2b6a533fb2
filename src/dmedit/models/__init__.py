"""The models: the registry (models.toml), where weights are (hub, local folders, offline
builders), what `dmedit models` prints, the model cache of a process, the video backends behind
one protocol (text-to-video, Show-1 and its stages), the detectors and the metric scorers."""
