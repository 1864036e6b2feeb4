import sys

from dicom_node.cli import main

if __name__ == "__main__":
    sys.exit(main())
