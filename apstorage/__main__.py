from apstorage.cli import main

main()
