"""Print the requirements of the project's extra TIER (base dependencies + the extra), one a line, plus the
build backend the image needs to build the project itself with `pip install --no-index`.
Read from pyproject.toml so the images never carry a second copy of the dependency list."""
import sys
from pathlib import Path

import tomllib

tier = sys.argv[1]
project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
print("\n".join(project["project"]["dependencies"] + project["project"]["optional-dependencies"][tier]
                + project["build-system"]["requires"]))
