"""MovieLens and PixelRec readers on real and hand-made files, including every kind of bad line."""

from pathlib import Path

import numpy as np
import pytest

from pgen_jax.data import movielens, pixelrec
from pgen_jax.errors import DataError

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def test_real_ml_latest_small_matches_its_readme():
  catalog, inter, report = movielens.read(ML_SMALL)
  # README: 100836 ratings across 9742 movies by 610 users.
  assert len(inter) == 100836
  assert len(np.unique(inter.user)) == 610
  assert len(catalog.titles) == 9742
  assert report.skipped["malformed"] == 0 and report.skipped["duplicate_interaction"] == 0
  assert catalog.titles[1] == "Toy Story (1995)"
  assert catalog.text(1) == "Toy Story (1995) | Adventure, Animation, Children, Comedy, Fantasy"
  assert catalog.tmdb[1] == 862
  # Quoted titles with commas survive.
  assert any("," in t for t in catalog.titles.values())
  assert set(np.unique(inter.rating)) <= {x / 2 for x in range(1, 11)}


def write(path: Path, data: bytes | str, encoding="utf-8"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))


def test_ml1m_latin1_titles(tmp_path):
  write(tmp_path / "movies.dat", "1::Misérables, Les (1995)::Drama|Musical\n2::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n",
        "latin-1")
  write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n2::2::4::978301968\n")
  catalog, inter, _ = movielens.read(tmp_path)
  assert catalog.titles[1] == "Misérables, Les (1995)"
  assert catalog.tags[2] == ["Adventure", "Sci-Fi"]
  assert inter.user.tolist() == [1, 1, 2] and inter.rating.tolist() == [5, 3, 4]


def test_bad_lines_are_counted_with_file_and_line(tmp_path):
  write(tmp_path / "movies.csv", b'movieId,title,genres\n1,Heat (1995),Action\n2,"Bad \xff title",Drama\n'
        b'x,Oops,Drama\n3,"Up, the (2009)",Animation\n')
  write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,100\n1,1,5.0,50\n1,3,4.0,200\n"
        "1,999,4.0,300\n1,3\n2,3,four,5\n2,1,3.0,10\n")
  catalog, inter, report = movielens.read(tmp_path)
  assert sorted(catalog.titles) == [1, 3]
  s = report.skipped
  assert s["undecodable"] == 1 and "movies.csv:3" in report.examples["undecodable"][0]
  assert s["malformed"] == 3  # movieId 'x', a short ratings line, a non-numeric rating
  assert any("ratings.csv:6" in e for e in report.examples["malformed"])
  assert s["unknown_item"] == 1 and "999" in report.examples["unknown_item"][0]
  assert s["duplicate_interaction"] == 1
  # The duplicate keeps the earliest rating (time 50), chronology intact.
  got = sorted(zip(inter.user.tolist(), inter.item.tolist(), inter.timestamp.tolist()))
  assert got == [(1, 1, 50), (1, 3, 200), (2, 1, 10)]


def test_non_finite_ratings_are_malformed(tmp_path):
  write(tmp_path / "movies.csv", "movieId,title,genres\n1,Heat (1995),Action\n2,Up (2009),Animation\n")
  write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,nan,100\n1,2,NaN,101\n2,1,inf,102\n"
        "2,2,-Infinity,103\n" + "".join(f"{u},1,4.5,104\n" for u in range(3, 8)))
  _, inter, report = movielens.read(tmp_path)
  assert inter.rating.tolist() == [4.5] * 5 and inter.user.tolist() == [3, 4, 5, 6, 7]
  assert report.skipped["malformed"] == 4 and "ratings.csv:2" in report.examples["malformed"][0]
  (tmp_path / "ratings.dat").write_text("1::1::nan::5\n1::2::5::6\n2::2::4::7\n")
  (tmp_path / "movies.dat").write_text("1::Heat (1995)::Action\n2::Up (2009)::Animation\n")
  _, inter, report = movielens.read(tmp_path)
  assert inter.item.tolist() == [2, 2] and report.skipped["malformed"] == 1


@pytest.mark.parametrize("case,message", [
    ("missing", "no MovieLens files"),
    ("empty", "empty file"),
    ("header", "lacks column"),
    ("garbage", "more bad lines"),
])
def test_unusable_files_are_errors_naming_the_file(tmp_path, case, message):
  if case != "missing":
    write(tmp_path / "movies.csv", "movieId,title,genres\n1,Heat (1995),Action\n")
    body = {"empty": "", "header": "user,movie,stars,time\n1,1,4,5\n",
            "garbage": "userId,movieId,rating,timestamp\n" + "a;b;c\n" * 5 + "1,1,4.0,5\n"}[case]
    write(tmp_path / "ratings.csv", body)
  with pytest.raises(DataError, match=message) as e:
    movielens.read(tmp_path)
  assert str(tmp_path) in str(e.value)


def test_pixelrec(tmp_path):
  write(tmp_path / "item_info.csv", "item_id,view_number,comment_number,thumbup_number,share_number,coin_number,"
        "favorite_number,barrage_number,title,tag,description\n10,5,0,1,0,0,0,0,Cat video,\"cats,funny\",desc\n"
        "11,5,0,1,0,0,0,0,Dog video,dogs,desc\n")
  write(tmp_path / "interactions.csv", "item_id,user_id,timestamp\n10,7,2021-01-02 00:00:00\n11,7,1609459200\n"
        "12,7,1609459300\nbad,7,1\n")
  catalog, inter, report = pixelrec.read(tmp_path)
  assert catalog.text(10) == "Cat video | cats, funny"
  assert sorted(zip(inter.item.tolist(), inter.timestamp.tolist())) == [(10, 1609545600), (11, 1609459200)]
  assert np.isnan(inter.rating).all()
  assert report.skipped["unknown_item"] == 1 and report.skipped["malformed"] == 1
