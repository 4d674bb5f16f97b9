from cassava.cli import main

raise SystemExit(main())
