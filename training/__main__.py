from .extras import require

require("python -m training", "train")  # before the modules that import them

from .cli import main  # noqa: E402

raise SystemExit(main())
