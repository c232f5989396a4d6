"""EarthGazer on Downlink: discover Sentinel-2 captures on a STAC API, back them up, process."""
