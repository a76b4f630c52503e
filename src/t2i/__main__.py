from t2i.cli import main

raise SystemExit(main())
