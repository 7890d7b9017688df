import sys

from instructor.course import main

sys.exit(main())
