"""Tools for testing your own formats, scale rules, estimators and recipes (above nn: it imports
formats, quant, ops and nn; nothing in lowprec imports it).

    from lowprec.testing import check_format
    check_format(my_format)   # AssertionError naming the format and the property that failed
"""

from lowprec.testing.conformance import check_estimator, check_format, check_recipe, check_scale_rule

__all__ = ["check_estimator", "check_format", "check_recipe", "check_scale_rule"]
