"""diffprompt: prompting diffusion representations for cross-domain semantic segmentation.

A thin package that holds every model, data and training piece of the toolkit; the
notebooks under notebooks/ call it. See README.md and docs/ for the map.
"""

__version__ = "0.1.0"
