"""Pure calculation: datastore resources in, dataplane messages out."""

from meshcrypt.calc.calculator import Calculator

__all__ = ["Calculator"]
