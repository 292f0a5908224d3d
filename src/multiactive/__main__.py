from multiactive.cli.main import main

main()
