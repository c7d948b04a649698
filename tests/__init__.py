# Copyright (c) rekd_mm contributors. All rights reserved.
