"""split_create_table: SHOW CREATE TABLE output rewritten for the replica's shadow table (pure function).

The inputs are what MariaDB 10.11 and MySQL 8 print; the partitioned and versioned ones used to
leave their tail inside the column list (error 1064 on every run).
"""
from __future__ import annotations

import pytest

from tasks.errors import SchemaError
from tasks.mysql_schema import split_create_table

MARIADB_RANGE = """CREATE TABLE `visit` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `day` date NOT NULL,
  PRIMARY KEY (`id`,`day`),
  KEY `by_day` (`day`)
) ENGINE=InnoDB AUTO_INCREMENT=41 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci COMMENT='PARTITION BY x, AUTO_INCREMENT=5'
 PARTITION BY RANGE (year(`day`))
(PARTITION `p2020` VALUES LESS THAN (2021) ENGINE = InnoDB,
 PARTITION `p2021` VALUES LESS THAN (2022) ENGINE = InnoDB)"""

MYSQL8_RANGE = """CREATE TABLE `trb3` (
  `id` int DEFAULT NULL,
  `purchased` date DEFAULT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci
/*!50100 PARTITION BY RANGE (year(`purchased`))
(PARTITION p0 VALUES LESS THAN (1990) ENGINE = InnoDB,
 PARTITION p3 VALUES LESS THAN (2005) ENGINE = InnoDB) */"""

MARIADB_SUBPARTITIONS = """CREATE TABLE `sub` (
  `id` int(11) NOT NULL,
  `d` date NOT NULL,
  PRIMARY KEY (`id`,`d`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
 PARTITION BY RANGE (year(`d`))
SUBPARTITION BY HASH (`id`)
SUBPARTITIONS 2
(PARTITION `p0` VALUES LESS THAN (2020) ENGINE = InnoDB,
 PARTITION `p1` VALUES LESS THAN MAXVALUE ENGINE = InnoDB)"""

MARIADB_HASH = """CREATE TABLE `p2` (
  `id` int(11) NOT NULL,
  PRIMARY KEY (`id`) COMMENT 'x'
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci
 PARTITION BY HASH (`id`)
PARTITIONS 4"""

EVERYTHING_ELSE = """CREATE TABLE `kw` (
  `id` int(11) NOT NULL COMMENT 'x\\n) ENGINE=foo',
  `KEY x` int(11) DEFAULT NULL,
  `INDEX` int(11) DEFAULT NULL,
  `UNIQUE KEY` int(11) DEFAULT NULL,
  `CONSTRAINT` int(11) DEFAULT 5 CHECK (`CONSTRAINT` > 0),
  `t` text DEFAULT 'a\\nb',
  `g` point NOT NULL,
  `v` int(11) INVISIBLE DEFAULT NULL,
  `s` int(11) GENERATED ALWAYS AS (`id` + 1) STORED,
  `p` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `k` (`KEY x`),
  FULLTEXT KEY `ft` (`t`),
  SPATIAL KEY `g` (`g`),
  CONSTRAINT `fk` FOREIGN KEY (`p`) REFERENCES `other` (`id`),
  CONSTRAINT `chk_v` CHECK (`v` > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci ROW_FORMAT=DYNAMIC COMMENT='a (b)\\nc' WITH SYSTEM VERSIONING"""


@pytest.mark.parametrize("ddl", [MARIADB_RANGE, MYSQL8_RANGE, MARIADB_SUBPARTITIONS, MARIADB_HASH])
def test_partitioning_is_dropped(ddl) -> None:
    split = split_create_table(ddl, "_etl_new_t")
    assert "PARTITION" not in split.create.replace("PARTITION BY x", "")
    assert split.create.startswith("CREATE TABLE `_etl_new_t` (\n  `")
    assert split.create.rstrip().endswith(("utf8mb4_general_ci", "utf8mb4_0900_ai_ci", "AUTO_INCREMENT=5'"))
    assert "\n)" in split.create and split.create.count("(") == split.create.count(")")


def test_range_partitioned_table_keeps_options_and_quoted_text() -> None:
    split = split_create_table(MARIADB_RANGE, "_etl_new_visit")
    assert split.create == (
        "CREATE TABLE `_etl_new_visit` (\n"
        "  `id` int(11) NOT NULL AUTO_INCREMENT,\n"
        "  `day` date NOT NULL,\n"
        "  PRIMARY KEY (`id`,`day`)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci COMMENT='PARTITION BY x, AUTO_INCREMENT=5'")
    assert split.add_indexes == "ALTER TABLE `_etl_new_visit` ADD KEY `by_day` (`day`)"


def test_columns_named_like_keywords_and_every_kind_of_key() -> None:
    split = split_create_table(EVERYTHING_ELSE, "_etl_new_kw")
    body = split.create.split("\n")
    assert body[1:11] == [
        "  `id` int(11) NOT NULL COMMENT 'x\\n) ENGINE=foo',",
        "  `KEY x` int(11) DEFAULT NULL,",
        "  `INDEX` int(11) DEFAULT NULL,",
        "  `UNIQUE KEY` int(11) DEFAULT NULL,",
        "  `CONSTRAINT` int(11) DEFAULT 5 CHECK (`CONSTRAINT` > 0),",
        "  `t` text DEFAULT 'a\\nb',",
        "  `g` point NOT NULL,",
        "  `v` int(11) INVISIBLE DEFAULT NULL,",
        "  `s` int(11) GENERATED ALWAYS AS (`id` + 1) STORED,",
        "  `p` int(11) DEFAULT NULL,",
    ]
    assert body[11:13] == ["  PRIMARY KEY (`id`),", "  CONSTRAINT `chk_v` CHECK (`v` > 0)"]
    # the copy holds the current rows: no system versioning of its own
    assert body[13] == ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci ROW_FORMAT=DYNAMIC COMMENT='a (b)\\nc'"
    assert split.add_indexes == ("ALTER TABLE `_etl_new_kw` ADD KEY `k` (`KEY x`), ADD FULLTEXT KEY `ft` (`t`), "
                                 "ADD SPATIAL KEY `g` (`g`)")
    assert split.dropped_foreign_keys == ("CONSTRAINT `fk` FOREIGN KEY (`p`) REFERENCES `other` (`id`)",)


def test_declared_system_period_keeps_versioning() -> None:
    ddl = """CREATE TABLE `sv2` (
  `id` int(11) NOT NULL,
  `rs` timestamp(6) GENERATED ALWAYS AS ROW START INVISIBLE,
  `re` timestamp(6) GENERATED ALWAYS AS ROW END INVISIBLE,
  PRIMARY KEY (`id`,`re`),
  PERIOD FOR SYSTEM_TIME (`rs`, `re`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci WITH SYSTEM VERSIONING"""
    assert split_create_table(ddl, "n").create.endswith("WITH SYSTEM VERSIONING")


def test_percent_in_names_is_in_format_form() -> None:
    ddl = "CREATE TABLE `a%b` (\n  `x%` int(11) DEFAULT NULL\n) ENGINE=InnoDB COMMENT='100%'"
    assert split_create_table(ddl, "n").create == "CREATE TABLE `n` (\n  `x%%` int(11) DEFAULT NULL\n) ENGINE=InnoDB COMMENT='100%%'"


def test_unexpected_output_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="unexpected SHOW CREATE TABLE output"):
        split_create_table("CREATE VIEW `v` AS SELECT 1", "n")
    with pytest.raises(SchemaError, match="no end of the column list"):
        split_create_table("CREATE TABLE `t` (\n  `a` int", "n")


def test_data_and_index_directories_of_the_source_host_are_dropped() -> None:
    ddl = ("CREATE TABLE `dd` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB DEFAULT "
           "CHARSET=utf8mb4 DATA DIRECTORY='/srv/mysql/' INDEX DIRECTORY='/srv/idx/' COMMENT='DATA DIRECTORY=''x'''")
    assert split_create_table(ddl, "n").create.endswith(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 "
                                                        "COMMENT='DATA DIRECTORY=''x'''")


# --- secondary UNIQUE indexes: plain on the replica, which merges by its key alone ---------------

UNIQUES = """CREATE TABLE `patient` (
  `id` int(11) NOT NULL,
  `email` varchar(80) NOT NULL,
  `ssn` char(9) NOT NULL,
  `doc` text DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `by_email` (`email`),
  UNIQUE KEY `by_ssn` (`ssn`(4),`email` DESC),
  UNIQUE KEY `by_doc` (`doc`) USING HASH,
  KEY `plain` (`ssn`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"""


def test_secondary_unique_indexes_become_plain_and_move_after_the_load() -> None:
    split = split_create_table(UNIQUES, "_etl_new_patient")
    assert "KEY" not in split.create.replace("PRIMARY KEY", "")
    assert split.add_indexes == ("ALTER TABLE `_etl_new_patient` ADD KEY `by_email` (`email`), "
                                 "ADD KEY `by_ssn` (`ssn`(4),`email` DESC), ADD KEY `plain` (`ssn`)")


def test_the_unique_key_a_table_is_merged_by_stays_unique() -> None:
    split = split_create_table(UNIQUES, "_etl_new_patient", keep_unique=("email",))
    assert "ADD UNIQUE KEY `by_email` (`email`)" in split.add_indexes
    assert "ADD KEY `by_ssn`" in split.add_indexes


def test_relax_unique_sql_turns_an_old_replica_table_s_uniques_plain_once() -> None:
    from tasks.mysql_schema import relax_unique_sql

    assert relax_unique_sql(UNIQUES, "patient") == (
        "ALTER TABLE `patient` DROP INDEX `by_email`, ADD KEY `by_email` (`email`), DROP INDEX `by_ssn`, "
        "ADD KEY `by_ssn` (`ssn`(4),`email` DESC), DROP INDEX `by_doc`")
    assert relax_unique_sql(UNIQUES, "patient", keep_unique=("email",)) == (
        "ALTER TABLE `patient` DROP INDEX `by_ssn`, ADD KEY `by_ssn` (`ssn`(4),`email` DESC), DROP INDEX `by_doc`")
    relaxed = "\n".join(line.replace("UNIQUE KEY", "KEY") for line in UNIQUES.split("\n") if "by_doc" not in line)
    assert relax_unique_sql(relaxed, "patient") is None
