from gammadb.cli import main

main()
